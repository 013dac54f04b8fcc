"""Learning algorithms that act on seed-batched networks (CBP, ReDo, Shrink & Perturb)."""
