"""The prepared dataset as the later stages read it: the decoded uint8 image cache and the manifest."""
