// Package protocol is the worker protocol: the messages a worker and the
// dispatcher exchange, the server the dispatcher mounts on its listener and
// the client every worker runs. It knows nothing of SQL or of Pampa's jobs.
//
// # Transport
//
// One long-lived HTTP/2 stream per worker: a POST to [Path] whose request
// body carries the worker's messages and whose response body carries the
// dispatcher's, one JSON object per line, both ways at once. Cleartext
// HTTP/2 (prior knowledge) serves loopback and SSH tunnels; TLS serves
// workers that reach the dispatcher directly. The standard library's HTTP/2
// is used rather than gRPC or Connect: the messages are few and small, no
// code generation step enters `go build`, and the same listener serves
// other HTTP endpoints of the dispatcher.
//
// # Authentication
//
// A worker proves it belongs to the cluster with the cluster's worker
// secret in the Authorization header (Bearer). The server compares it in
// constant time before it reads anything else; a peer without it, with a
// wrong one, or whose first message is not a hello gets a 401 or 400 with a
// one-line reason and nothing else, and is logged with its address. The
// secret never appears in a message, a log line or an error.
//
// One worker id is held by at most one stream: a second process with the
// same id is refused (409). The same process reconnecting after a cut
// (same Hello.Instance) replaces its old stream, which the server may not
// yet know is dead.
//
// # Delivery
//
// Rows flow from the dispatcher as the worker has room; starts and
// outcomes flow back. Each outcome carries a sequence number and stays
// with the client until the server acknowledges it ([KindAcks]), which the
// dispatcher does once the outcome is committed or refused as late. On
// every reconnect the client sends its unacknowledged outcomes again, so an
// outcome survives dispatcher restarts, database restarts and network cuts
// for as long as the worker process lives.
//
// # Liveness
//
// Both sides ping at the server's period (2 s by default, in the welcome).
// A worker that has not heard the server for two pings starts no new row
// (Client.Heard), and gives the stream up after three; the server closes a
// stream silent for three. The dispatcher takes rows back only from
// workers gone for its heartbeat timeout on top of that, so a row a
// cut-off worker started is taken back only if its step runs longer than
// that margin.
//
// A worker that lost its stream tries each dispatcher address once per
// round, each attempt bounded from the dial to the answer, and backs off
// between rounds; [FindLeaderWithin] bounds how long it takes to reach a
// new leader, and a new leader waits that long before it takes the rows
// of the workers its predecessor knew.
//
// # Encoding
//
// One JSON object per line. The messages a stream carries by the thousand
// are written and read without reflection (encode.go, decode.go); any
// other goes through encoding/json, and fuzz tests hold the two to the
// same meaning.
package protocol
