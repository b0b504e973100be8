"""XRayGAN neural network modules (Yang et al., 2021, §2).

:mod:`xrg.models.encoder` holds the hierarchical attentional report encoder (§2.1) and its
flat "w/o HAE" ablation, :mod:`xrg.models.xraygan` the multi-scale conditional GAN (§2.2)
with its "w/o MSCGAN" ablation and the WGAN-GP penalty (§2.4), :mod:`xrg.models.vcn` the
view-consistency network (§2.3). Training loops live elsewhere.
"""
