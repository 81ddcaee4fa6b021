"""Curation: which accepted images reach synthesis (filters, the Chinese-text policy, the verdict per image)."""
