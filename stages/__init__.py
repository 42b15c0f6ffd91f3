"""Build deployment bundles of an ONNX CTC text recognizer for device classes."""
