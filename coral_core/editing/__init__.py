"""CoralStyleCLIP editing: multi-layer blended synthesis, region selectors, directions, losses,
the trainer, edit files, apply and mask visualisation."""
