"""Model card templates (Jinja, rendered with huggingface_hub.ModelCard); shipped as hf_classifier.model_cards."""
