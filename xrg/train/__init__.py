"""Training of XRayGAN (Yang et al., §2.4 and §3.2) and of its view-consistency networks (§2.3).

:mod:`xrg.train.vcn` trains the offline VCNs, one per stage resolution; :mod:`xrg.train.xraygan`
trains the report encoder and the multi-scale GAN stage by stage against those frozen VCNs;
:mod:`xrg.train.baselines` trains the Table-1 baselines, :mod:`xrg.train.evaluators` the
evaluation's finding classifier and VCN; :mod:`xrg.train.benchmarks` times training and
generation. The models themselves (and how they save and load their checkpoints,
:mod:`xrg.checkpoint`) live in :mod:`xrg.models`; generation and evaluation never import this
package.
"""
