"""Training for ddpm-from-scratch: `accelerate launch training/train.py ...`, `python training/train.py ...`
or the installed command `ddpm-train ...` (the `train` extra: pip install "ddpm-from-scratch[train]").

Modules, one job each:
    config       command line, presets, checks that need no data
    data         datasets loading, image column detection, preprocessing, the per-process batch order
    objective    the training loss (L_simple) from the forward process
    ema          exponential moving average of the weights, with warmup
    checkpoints  atomic checkpoint folders, manifests, corruption checks, rotation
    components   the UNet, scheduler and pipeline this project trains and saves
    plots        the loss curve PNG (PIL only)
    train        the loop that ties them together
    tune_digits_preset  the measurements behind the digits preset (full runs, time and sample quality)
configs/ holds example accelerate configs; assets/ the samples and loss curve of the default digits run.
"""
