# ultra-boost's front door. `make` (or `make help`) lists the targets.
#
# Images are built with BuildKit (docker buildx) from the Dockerfile's targets
# and tagged with the CI build number and the short commit SHA; a release is
# handed to guard, which rolls it out, verifies it against the SLOs and reverts
# it on its own when it burns the error budget.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

REGISTRY    ?= registry.digitalocean.com/ultra-boost
BUILD       ?= $(or $(DRONE_BUILD_NUMBER),)
PR          ?= $(or $(DRONE_PULL_REQUEST),)
GIT_COMMIT  ?= $(or $(DRONE_COMMIT_SHA),$(shell git rev-parse HEAD 2>/dev/null),unknown)
SHORT_SHA   := $(shell printf '%.7s' '$(GIT_COMMIT)')
# guard's API (CI's only way into production: a bearer token, no cluster credentials).
GUARD_API_URL ?= https://guard.example.com
GUARD       ?= cargo run --quiet --release --locked -p guard --
CARGO       ?= cargo
DOCKER      ?= docker
# A buildx builder with the docker-container driver (needed for registry cache
# export); CI keeps one per agent so cache mounts stay warm.
BUILDER     ?=
BUILDX       = $(DOCKER) buildx build $(if $(BUILDER),--builder $(BUILDER))
MANIFESTS   ?= dist/manifests
# Registry-backed BuildKit layer cache, one ref per image (see .drone.yml).
CACHE_FLAGS  = --cache-from type=registry,ref=$(REGISTRY)/$(1):buildcache \
               --cache-to type=registry,ref=$(REGISTRY)/$(1):buildcache,mode=max
BUILD_ARGS   = --build-arg BUILD_NUMBER=$(or $(BUILD),dev) --build-arg GIT_COMMIT=$(GIT_COMMIT)
IMAGES      := ultra-boost guard

define require
$(if $($(1)),,$(error $(1) is required: make $(MAKECMDGOALS) $(1)=$(2)))
endef

.PHONY: help
help: ## List the targets
	@printf 'Usage: make TARGET [BUILD=N] [PR=N] [REGISTRY=%s]\n\n' '$(REGISTRY)'
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

## --- build -------------------------------------------------------------

# Builds one Dockerfile target into the local image store as :BUILD and :SHORT_SHA.
image = $(BUILDX) --target $(1) $(BUILD_ARGS) \
	  -t $(REGISTRY)/$(1):$(or $(BUILD),dev) -t $(REGISTRY)/$(1):$(SHORT_SHA) --load .

.PHONY: ultra-boost guard debug
ultra-boost: ## Build the service image (distroless, non-root)
	$(call image,ultra-boost)

guard: ## Build guard's image (distroless, non-root)
	$(call image,guard)

debug: ## Build the debug image: both binaries with symbols, under gdbserver on :2345
	$(call image,debug)

.PHONY: image-test
image-test: ## Run the test suite inside the Dockerfile's test target
	$(BUILDX) --target test $(BUILD_ARGS) .

## --- test --------------------------------------------------------------

.PHONY: unit-tests
unit-tests: ## Unit tests only (library and binary crates, no integration tests)
	$(CARGO) test --workspace --locked --lib --bins

.PHONY: test
test: ## The whole suite, as CI runs it (installs what the tests need first)
	scripts/test

.PHONY: check-delivery
check-delivery: ## Lint the Dockerfile, manifests, Terraform, Prometheus, Alertmanager, dashboards, scripts, YAML
	scripts/check-delivery.sh

# How each benchmark script is run (the delivery checks list them with `echo`).
BENCH_RUN ?= bash

.PHONY: bench
bench: ## Run every benchmark (bench/*/run.sh; each prints its figures beside a baseline)
	@found=0; for b in bench/*/run.sh; do \
	  if [ -f "$$b" ]; then found=1; echo "== $$b"; $(BENCH_RUN) "$$b" || exit 1; fi; \
	done; \
	if [ "$$found" = 0 ]; then echo "make bench: no bench/*/run.sh found" >&2; exit 1; fi

## --- push --------------------------------------------------------------

.PHONY: push
push: $(addprefix push-,$(IMAGES)) ## Build and push both images as :BUILD and :SHORT_SHA

.PHONY: push-%
push-%: ## Build and push one image (push-ultra-boost, push-guard) as :BUILD and :SHORT_SHA
	$(call require,BUILD,86)
	$(BUILDX) --target $* $(BUILD_ARGS) $(call CACHE_FLAGS,$*) \
	  -t $(REGISTRY)/$*:$(BUILD) -t $(REGISTRY)/$*:$(SHORT_SHA) --push .

.PHONY: push-pr
push-pr: ## Build and push ultra-boost for a pull request as :pr-PR and :BUILD
	$(call require,PR,42)
	$(call require,BUILD,86)
	$(BUILDX) --target ultra-boost $(BUILD_ARGS) $(call CACHE_FLAGS,ultra-boost) \
	  -t $(REGISTRY)/ultra-boost:pr-$(PR) -t $(REGISTRY)/ultra-boost:$(BUILD) --push .

## --- deploy ------------------------------------------------------------

.PHONY: deploy-prd
deploy-prd: ## Ask guard to deploy BUILD to production and wait for its verdict (GUARD_API_TOKEN)
	$(call require,BUILD,86)
	@if [ -z "$${GUARD_API_TOKEN:-}" ] && [ -z "$${GUARD_API_TOKEN_FILE:-}" ]; then \
	  echo "make deploy-prd: set GUARD_API_TOKEN (or GUARD_API_TOKEN_FILE) for $(GUARD_API_URL)" >&2; exit 2; fi
	GUARD_API_URL=$(GUARD_API_URL) $(GUARD) deploy ultra-boost --env production --build $(BUILD) --wait --commit $(GIT_COMMIT)

.PHONY: demo
demo: ## guard demo: deploy a good, an erroring and a slow build locally; see them judged
	$(CARGO) run --release --locked -p guard -- demo

## --- generated assets --------------------------------------------------

.PHONY: manifests
manifests: ## Render production and guard manifests for BUILD (and review for PR) into dist/manifests
	$(call require,BUILD,86)
	mkdir -p $(MANIFESTS)
	deploy/kustomize/render.sh production --build $(BUILD) > $(MANIFESTS)/production.yaml
	deploy/kustomize/render.sh guard --build $(BUILD) > $(MANIFESTS)/guard.yaml
	$(if $(PR),deploy/kustomize/render.sh review --pr $(PR) > $(MANIFESTS)/review-pr-$(PR).yaml)
	@ls -l $(MANIFESTS)

.PHONY: rules
rules: ## Generate the Prometheus SLO rules from slos/ultra-boost.yml
	$(GUARD) slo generate -i slos/ultra-boost.yml -o deploy/prometheus/rules/ultra-boost.rules.yml
	promtool check rules deploy/prometheus/rules/ultra-boost.rules.yml
