"""The variational bound and the training losses, built on the derivation's chain and its one reverse step.

    likelihood          L_T, L_{t-1}, L_0 and bits/dim (`nll_bits_per_dim`)
    losses              L_simple, L_vlb and the hybrid loss (`training_loss`, LOSS_TYPES)
    analytic_variance   Monte-Carlo estimate of E||eps_theta||^2 / d for the analytic variance
"""
