// Package sshx is a small SSH and SFTP client for running commands on, and
// copying files to, remote Unix hosts. It knows nothing of Pampa.
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
//   - Upload and WriteFile are atomic: data goes to a temporary file in the
//     target directory, its SHA-256 is verified on the node, then it is
//     chmod-ed and renamed over the target. Replacing a running executable
//     works. On failure the temporary file is removed.
//   - Passwords and passphrases never appear in errors; Config's String
//     method redacts them.
//   - Close stops every goroutine the Client started and waits for them.
//
// Errors name the operation and the node, for example
// "dial node 10.0.0.7:22: ...", and wrap their cause with %w.
package sshx
