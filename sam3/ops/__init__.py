"""Pure tensor functions on boxes and masks, shared by data, model, loss and evaluation."""
