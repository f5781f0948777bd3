"""Weight-baked neuron masks. Not implemented yet: see the masking issue."""
