"""Step 00: what this machine offers, written to ``env.json`` so later runs can be compared."""
from __future__ import annotations

from seglab import devices
from seglab.backend import keras, sm, tf
from seglab.machine import nvidia_smi, versions
from seglab.records import Environment
from seglab.rundir import RunDir


def environment_report() -> Environment:
    build = tf.sysconfig.get_build_info()
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append({"device": device.name, "name": details.get("device_name"),
                     "compute_capability": details.get("compute_capability")})
    tpu = bool(tf.config.list_logical_devices("TPU"))
    return Environment(
        accelerator="TPU" if tpu else ("GPU" if gpus else "CPU"), gpus=gpus, nvidia_smi=nvidia_smi(),
        tensorflow=tf.__version__, keras=keras.__version__, segmentation_models=sm.__version__,
        built_with_cuda=tf.test.is_built_with_cuda(), cuda_build_version=build.get("cuda_version"),
        cudnn_build_version=build.get("cudnn_version"), cpu_count=len(tf.config.list_physical_devices("CPU")),
        versions=versions())


def advice(report: Environment) -> str:
    if report.accelerator == "CPU":
        units = (" This CPU computes bfloat16 natively: training computes in bfloat16 (mixed_bfloat16), about 1.4 "
                 "times faster." if devices.cpu_has_bfloat16_units() else "")
        return ("No GPU found: training runs on the CPU. configs/demo.yaml is sized for that (minutes); "
                "configs/colab_t4.yaml expects a GPU such as Colab's T4." + units)
    names = ", ".join(g["name"] or g["device"] for g in report.gpus) or report.accelerator
    return f"{report.accelerator} found ({names}): mixed precision will be used for training."


def write_report(run: RunDir, cfg) -> Environment:
    """Run step 00: ``env.json``."""
    with run.begin("gpu_check", cfg) as step:
        report = environment_report()
        step.save(report)
        step.finish()
    return report
