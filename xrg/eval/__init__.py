"""Evaluation of generated chest X-rays (XRayGAN §3.2 metrics and more)."""
