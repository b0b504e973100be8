"""XRayGAN neural network modules (Yang et al., 2021, §2).

:mod:`xrg.models.encoder` holds the hierarchical attentional report encoder (§2.1) and its
flat "w/o HAE" ablation, :mod:`xrg.models.xraygan` the multi-scale conditional GAN (§2.2)
with its "w/o MSCGAN" ablation and the WGAN-GP penalty (§2.4), :mod:`xrg.models.vcn` the
view-consistency network (§2.3), :mod:`xrg.models.baselines` the Table-1 baselines,
:mod:`xrg.models.pggan` the dissertation's unconditional progressive GAN. Every
runnable model (:class:`~xrg.models.xraygan.XRayGAN`, :class:`~xrg.models.baselines.BaselineModel`,
:class:`~xrg.models.vcn.ViewConsistencyNet`, :class:`~xrg.models.pggan.PGGAN`, the finding classifier) owns one
model-config dataclass and its checkpoint (:mod:`xrg.models.base`: ``save`` and
``from_checkpoint``). Training loops live in :mod:`xrg.train`, which nothing here imports.
"""
