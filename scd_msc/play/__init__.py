"""``scd-msc play``: steer a model conditioned on actions from a web page (DESIGN.md §9).

The browser sends the action of the keys held down; the server steps the model's
streaming session with it and sends the frame back as a PNG over a WebSocket. Pieces:

* :mod:`scd_msc.play.keys` — which keys press which action (from the action names);
* :mod:`scd_msc.play.game` — the session a page drives: reset (a held-out clip or a
  blank start), step, the ``--record`` mp4 (torch only, no web stack);
* :mod:`scd_msc.play.server` — the Starlette app (the page, ``/ws``) and uvicorn on a
  socket bound by the command; Starlette is imported lazily (extra ``play``);
* :mod:`scd_msc.play.cli` — the command's arguments and checks;
* ``page.html`` — the page: one static file, no build step.

Models and ops never import this package.
"""
