"""Text side: turning a label or a phrase into a query vector."""
