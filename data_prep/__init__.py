"""Scripts converting datasets between their official layouts, fgjax and the original
repositories' layouts (see README.md here)."""
