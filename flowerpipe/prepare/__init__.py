"""What only the prepare stage runs: getting the photos, checking and decoding them, duplicates, the split."""
