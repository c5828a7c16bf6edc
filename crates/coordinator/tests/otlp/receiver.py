"""An OTLP/HTTP trace receiver for tests/otlp.rs.

Listens on 127.0.0.1 (a free port, printed first on stdout as `listening <port>`),
decodes each POST /v1/traces body (protobuf, optionally gzip) with the OpenTelemetry
project's generated classes (opentelemetry-proto), and prints one JSON line per span:
its service, trace, span and parent ids, name, kind and attributes. Answers as a
collector does (200, an empty ExportTraceServiceResponse); anything it cannot decode
is a 400 and a line on stderr.
"""

import gzip
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            if self.path != "/v1/traces":
                raise ValueError(f"unexpected path {self.path}")
            if self.headers.get("Content-Type") != "application/x-protobuf":
                raise ValueError(f"unexpected content type {self.headers.get('Content-Type')}")
            request = ExportTraceServiceRequest.FromString(body)
        except Exception as e:  # noqa: BLE001 - any failure is the test's to see
            print(f"receiver: cannot decode: {e}", file=sys.stderr, flush=True)
            self.send_response(400)
            self.end_headers()
            return
        for resource_spans in request.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    print(
                        json.dumps(
                            {
                                "service": resource.get("service.name"),
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": span.kind,
                                "attributes": {a.key: value(a.value) for a in span.attributes},
                                "links": [l.span_id.hex() for l in span.links],
                            }
                        ),
                        flush=True,
                    )
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
