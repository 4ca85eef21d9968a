"""nas_mtl: neural architecture search for multi-task learning."""
