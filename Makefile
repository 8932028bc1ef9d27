# mvm: build, demo, test. Every target installs what it needs first.
GO      ?= go
BIN     ?= bin
LDFLAGS ?= -s -w

.PHONY: build demo test test-go test-sdk bench setup clean proto

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/mvmctl ./cmd/mvmctl
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/mvm-agent ./cmd/mvm-agent
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/mvm-egress ./cmd/mvm-egress
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/containerd-shim-mvm-v2 ./cmd/containerd-shim-mvm-v2

setup: build
	$(BIN)/mvmctl setup

# The main job on a fresh machine: install, boot a microVM, run a command.
demo: setup
	$(BIN)/mvmctl doctor
	$(BIN)/mvmctl run -- uname -a

# The whole test suite (real microVMs under QEMU).
test: setup
	./scripts/test.sh

bench: setup
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/

proto:
	cd internal/agentapi && protoc -I proto --go_out=agentpb --go_opt=paths=source_relative \
		--go-grpc_out=agentpb --go-grpc_opt=paths=source_relative proto/agent.proto

clean:
	rm -rf $(BIN)
