"""Start the browser demo: ``python demo/app.py [--model M] [--port P] [--device D]``.

The same as ``turbo-diffusion demo``; the page itself lives in `turbo_diffusion.demo.app`, so it also works from
an installed package.
"""

import sys

from turbo_diffusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
