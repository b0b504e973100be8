"""Training of XRayGAN (Yang et al., §2.4 and §3.2) and of its view-consistency networks (§2.3).

:mod:`xrg.train.vcn` trains the offline VCNs, one per stage resolution; :mod:`xrg.train.xraygan`
trains the report encoder and the multi-scale GAN stage by stage against those frozen VCNs;
:mod:`xrg.train.checkpoint` writes and checks the self-describing checkpoints both produce;
:mod:`xrg.train.benchmarks` times training and generation.
"""
