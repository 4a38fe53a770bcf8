# Thin wrapper over CMake: deps, build, test, demo, bench. Everything real lives in CMakeLists.txt.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: deps configure build test test-sanitize demo demo-single demo-data bench clean

deps:
	@bash scripts/install-deps.sh
	@bash scripts/setup-tokenizer.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) > $(BUILD).configure.log 2>&1 \
	  || (cat $(BUILD).configure.log; exit 1)

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

demo-data: build
	@bash scripts/prepare-demo-data.sh $(BUILD)

# The decentralized demo: a coordinator and 3 DiLoCo nodes as processes on this machine; one
# is killed mid-run and a new one joins (scripts/demo.py). A fresh run each time (runs/demo).
demo: demo-data
	@python3 scripts/demo.py --bin $(BUILD)/apps/meridian/meridian --dir runs/demo

# One node alone on the embedded default config (runs/demo-single).
demo-single: demo-data
	@rm -rf runs/demo-single
	@$(BUILD)/apps/meridian/meridian train --set run.dir=runs/demo-single

test: demo-data
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE 'slow|gpu' --timeout 600

# The torch-free libraries once more under AddressSanitizer and UndefinedBehaviorSanitizer.
test-sanitize: deps
	@cmake -S . -B build-asan -DMERIDIAN_TORCH=OFF -DMERIDIAN_SANITIZE=ON > build-asan.configure.log 2>&1 \
	  || (cat build-asan.configure.log; exit 1)
	@cmake --build build-asan -j $(JOBS)
	@cd build-asan && ctest --output-on-failure -j $(JOBS) -LE 'slow|gpu' --timeout 600

bench: build
	@bash bench/bench_step.sh $(BUILD)

clean:
	rm -rf $(BUILD) build-asan *.configure.log
