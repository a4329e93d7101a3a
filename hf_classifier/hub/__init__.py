"""Hub: the model card, publishing, and failing fast offline."""
