"""Graders: answer extraction and equivalence checks, one module per answer type."""
