// Package sshx is a small SSH client for running commands on remote Unix
// hosts, streaming their input and output, and keeping reverse tunnels
// (a port on the node that leads to the control host). It knows nothing of Pampa. Files travel as a command's
// stdin (see package deploy): one round trip, and no sftp-server needed on
// the node.
//
// Contracts:
//
//   - Every blocking call takes a context. Dial bounds the TCP connect by
//     Config.ConnectTimeout and the SSH handshake (banner, key exchange and
//     authentication) by Config.HandshakeTimeout, so a peer that accepts and
//     never speaks cannot hang it.
//   - Host keys are verified against known_hosts. An unknown host fails with
//     *UnknownHostError unless Config.AcceptNewHostKeys is set, in which case
//     its key is recorded. A changed key always fails with *HostKeyError.
//   - Commands are argv slices, quoted with Quote for the remote POSIX shell;
//     no argument can inject shell syntax. A non-zero exit is an *ExitError.
//     Cancelling the context kills the remote command (signal KILL) and
//     closes its session.
//   - A Client sends keepalives; when the node stops answering, the
//     connection is closed and blocked calls fail with ErrUnresponsive
//     within a few keepalive intervals instead of hanging on a dead link.
//   - Passwords and passphrases never appear in errors; Config's String
//     method redacts them.
//   - Close stops every goroutine the Client started and waits for them.
//
// Errors name the operation and the node, for example
// "dial node 10.0.0.7:22: ...", and wrap their cause with %w.
package sshx
