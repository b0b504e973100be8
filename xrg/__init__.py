"""xrg: chest X-ray generation from radiology reports.

The library behind the xrg book: data (real Open-i reports rendered through a real CT),
models (XRayGAN and friends), training, evaluation and generation pipelines.
"""

__version__ = "2.0.0"
