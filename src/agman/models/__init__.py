"""Models layer: backbones, attention modules (ASA, SA, ACA, CA), AG-MAN and baselines, registry."""
