"""Training: one trainer loop shared by contrastive pre-training and downstream tasks."""
