"""The Processing algorithms of Stack Segmenter (one per file) and their shared base."""
