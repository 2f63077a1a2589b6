"""CoralStyleCLIP engine: pure PyTorch, never imports ComfyUI."""
