"""Stage 1: fine-tune a BERT checkpoint on CoLA with the Hugging Face Trainer."""
