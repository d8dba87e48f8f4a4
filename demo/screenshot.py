"""Make the README's screenshot of the demo from a real run: start the page, generate, save a PNG.

    python demo/screenshot.py [--model M] [--out docs/demo.png] [--prompt TEXT] [--ratio R] [--steps N]

It serves the demo in this process on a free loopback port, drives it in headless Chromium (the system's, see
`turbo_diffusion.demo.browser`), clicks Generate with the model's default prompt and size, and saves the page.
Rerun it with ``--model shapes`` once the shapes weights are in the package.
"""

import argparse
import sys

from turbo_diffusion.demo.settings import default_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model(),
                        help="built-in name, folder or Hub id (default: %(default)s)")
    parser.add_argument("--out", default="docs/demo.png", help="screenshot path (default: %(default)s)")
    parser.add_argument("--prompt", help="prompt (default: the model's default prompt)")
    parser.add_argument("--ratio", type=float, default=0.5, help="Turbo ratio (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    args = parser.parse_args(argv)

    from turbo_diffusion.demo import browser
    from turbo_diffusion.demo.app import build_app, serve
    from turbo_diffusion.demo.session import DemoSession

    session = DemoSession(args.model, args.device)
    if args.steps:
        session.defaults = session.defaults.replace(steps=args.steps)
    session.warm_up()
    app = serve(build_app(session), browser.free_port(), block=False, quiet=True)
    try:
        with browser.browser_page() as page:
            browser.open_demo(page, app.local_url)
            summary = browser.generate(page, args.prompt or session.defaults.prompt, ratio=args.ratio,
                                       timeout_ms=600_000)
            page.screenshot(path=args.out, full_page=True)
    finally:
        app.close()
    print(f"saved {args.out}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
