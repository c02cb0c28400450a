"""The data: raw files checked by content, datasets and their split, augmentation."""
