import argparse

import config
from apps.annotator_app import build_annotator_demo
from apps.errors import log_to_terminal
from ldm.errors import add_debug_argument, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description="Every annotator on its own tab")
    parser.add_argument("--host", default=config.HOST)
    parser.add_argument("--port", type=int, default=config.PORT)
    parser.add_argument("--share", action="store_true")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    log_to_terminal()
    build_annotator_demo().queue(max_size=config.QUEUE_SIZE).launch(server_name=args.host, server_port=args.port,
                                                                     share=args.share, show_error=True)


if __name__ == "__main__":
    run_main(main)
