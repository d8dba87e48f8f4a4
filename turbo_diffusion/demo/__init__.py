"""The browser demo: a baseline and a Turbo image side by side, what Turbo merged, and a ratio sweep.

    turbo-diffusion demo [--model M] [--port P]        # or: python demo/app.py [--model M] [--port P]

Modules, from light to heavy: `settings` (what the page asks for, checked without torch), `visuals` (merge overlay
and heat maps from `inspect_plans` records; numpy and Pillow), `session` (one pipeline, loaded once, generating
under a lock), `app` (the Gradio page) and `browser` (headless Chromium to drive the page, for tests and
screenshots). Importing this package imports none of them.
"""
