"""SomaBrain: governed memory and context for AI agents."""
