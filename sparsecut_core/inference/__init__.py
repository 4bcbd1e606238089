"""Using a trained model: loading it (on a device, maybe 4-/8-bit) and chatting about an image."""
