# Pampa's front door. `make help` lists the targets.
GO      ?= go
BIN     ?= bin
PKGS    ?= ./...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/pampa-go/pampa/cmd/pampactl/pampacli.version=$(VERSION)

.PHONY: help build test test-short bench demo lint dist clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/pampactl (controller, dispatcher and worker) and beside it bin/pampa-worker (the worker-only build, which workers run)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/pampactl ./cmd/pampactl
	@# static (CGO_ENABLED=0): it runs on nodes whatever their libc
	CGO_ENABLED=0 $(GO) build -o $(BIN)/pampa-worker ./cmd/pampa-worker

test: ## run every test with the race detector (needs PostgreSQL, OpenSSH server and chromium; .ci/run installs them)
	$(GO) vet $(PKGS)
	cd bench && $(GO) vet ./... # the bench harness is a module of its own: it must keep building
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

test-short: ## tests without the race detector, for a quick loop
	$(GO) test -count=1 $(PKGS)

bench: build ## measure throughput, latency (against River and a raw-SQL ceiling) and the SSH fleet (against scp, GNU parallel); writes BENCHMARKS.md
	cd bench && $(GO) run . -out ../BENCHMARKS.md

demo: build ## the seed's example: 100,000 numbers, a dispatcher and two local workers on a private PostgreSQL
	./$(BIN)/pampactl demo

lint: ## go vet, a gofmt check and shellcheck on the node scripts (deploy/scripts)
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	shellcheck --norc -s sh deploy/scripts/*.sh

dist: ## cross-build pampactl and pampa-worker (the worker-only build, which nodes deploy pushes) for linux/amd64 and linux/arm64 into dist/
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o dist/pampactl-linux-amd64 ./cmd/pampactl
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o dist/pampactl-linux-arm64 ./cmd/pampactl
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build -trimpath -o dist/pampa-worker-linux-amd64 ./cmd/pampa-worker
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build -trimpath -o dist/pampa-worker-linux-arm64 ./cmd/pampa-worker

clean: ## remove build outputs
	rm -rf $(BIN) dist
