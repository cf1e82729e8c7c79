"""Browser end-to-end tests (headless Chromium driven by Playwright)."""
