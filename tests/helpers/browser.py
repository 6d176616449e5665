"""Headless Chromium as the browser tests run it."""

# Chromium as the tests run it: headless, and quiet on a machine without internet.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
