"""Calling ROS services from a thread other than the executor's (which delivers the response)."""
from __future__ import annotations

import threading
from typing import Any

from rclpy.node import Node


class ServiceClient:
    """An rclpy service client with the (ready, call) interface the MoveIt backend expects.

    `call` waits on an event set by the response callback, which the node's executor thread delivers:
    it must be called from another thread (the guard's planning thread, a tool's main thread), and
    gives up after the timeout instead of blocking its caller.
    """

    def __init__(self, node: Node, srv_type: Any, name: str) -> None:
        self._node = node
        self._client = node.create_client(srv_type, name)

    def ready(self, timeout_s: float) -> bool:
        return self._client.wait_for_service(timeout_sec=timeout_s)

    def call(self, request: Any, timeout_s: float) -> Any | None:
        """The response, or None after `timeout_s`."""
        done = threading.Event()
        future = self._client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout_s):
            self._client.remove_pending_request(future)
            return None
        return future.result()

    def destroy(self) -> None:
        self._node.destroy_client(self._client)


def call_service(node: Node, srv_type: Any, service: str, request: Any, timeout: float = 10.0) -> Any:
    """The response of `service` (spun by the caller's executor); raises RuntimeError if it is missing
    or silent."""
    client = ServiceClient(node, srv_type, service)
    try:
        if not client.ready(timeout):
            raise RuntimeError(f'no {service} service')
        response = client.call(request, timeout)
        if response is None:
            raise RuntimeError(f'{service} did not answer within {timeout:g} s')
        return response
    finally:
        client.destroy()
