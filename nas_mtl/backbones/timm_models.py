"""timm models split into blocks (filled in by the timm adapter work)."""
