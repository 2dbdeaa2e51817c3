"""A real RTSP server for the tests: GStreamer's RTSP server serving a live H.264 test pattern.

Run with the system Python, which has the GObject bindings (Debian ``python3-gst-1.0`` and
``gir1.2-gst-rtsp-server-1.0``); the project's virtualenv does not. ``tests/support/rtsp.py``
starts it; run by hand::

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 --user user --password secret

then ``ffplay rtsp://user:secret@127.0.0.1:8554/cam``. It prints ``ready <port>`` on stdout
once it listens, and runs until killed. ``--check`` exits 0 when every GStreamer element it
needs is installed (``make setup`` uses it).
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ELEMENTS = ("videotestsrc", "x264enc", "rtph264pay")
"""gstreamer1.0-plugins-base, -ugly and -good."""


def pipeline(*, width: int, height: int, fps: int, key_int: int) -> str:
    """A live test pattern, H.264 with a keyframe (and SPS/PPS) every ``key_int`` frames."""
    return (
        f"( videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,width={width},height={height},framerate={fps}/1,format=I420 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={key_int} threads=1 "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 0 when all is installed")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--key-int", type=int, default=5)
    parser.add_argument("--user", default=None, help="require RTSP basic auth with this user")
    parser.add_argument("--password", default=None)
    args = parser.parse_args()

    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        print(f"missing GStreamer elements: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.check:
        return 0
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        pipeline(width=args.width, height=args.height, fps=args.fps, key_int=args.key_int)
    )
    factory.set_shared(True)  # one encoder for every client, as a camera has

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("viewer", "media.factory.access", True)
        permissions.add_permission_for_role("viewer", "media.factory.construct", True)
        factory.set_permissions(permissions)

    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print(f"ready {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
