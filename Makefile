# Mailmoat: `make run` serves on the embedded defaults, `make test` runs every check.
# Both set up what is missing on a fresh Debian machine first.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: run stop test lint typecheck pytest system-deps venv tls clean model scores
CORPUS ?= ../shared/corpora/spamassassin-public.tar.gz

run: venv tls
	scripts/clamd start
	@$(BIN)/mailmoat config check $(if $(CONFIG),--config $(CONFIG)) | sed -n 's|^  console *|console: |p'
	@echo "  (create a console user: $(BIN)/mailmoat users add admin --role admin)"
	$(BIN)/mailmoat web $(if $(CONFIG),--config $(CONFIG)) & web=$$!; \
	trap 'kill $$web 2>/dev/null' EXIT INT TERM; \
	MAILMOAT_SERVER__TLS_CERT=var/tls/cert.pem MAILMOAT_SERVER__TLS_KEY=var/tls/key.pem \
		$(BIN)/mailmoat serve $(if $(CONFIG),--config $(CONFIG))

test: venv lint typecheck pytest
	$(BIN)/mailmoat config check --config config/mailmoat.example.toml
	$(BIN)/mailmoat rules lint rules/

system-deps:
	@scripts/install-system-deps

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

tls: var/tls/cert.pem

var/tls/cert.pem:
	mkdir -p var/tls
	openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$$(hostname -f 2>/dev/null || hostname)" \
		-keyout var/tls/key.pem -out var/tls/cert.pem 2>/dev/null
	chmod 600 var/tls/key.pem

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest --cov --cov-report=term --cov-fail-under=90 $(PYTEST_ARGS)

# Rebuild the shipped model from the SpamAssassin corpus: dataset (fixed md5 split),
# train, evaluate against the model in service, promote if not worse.
model: venv
	$(BIN)/mailmoat model dataset --corpus $(CORPUS) --split md5 --keep-duplicates \
		--out var/datasets/spamassassin.jsonl.gz
	$(BIN)/mailmoat model train var/datasets/spamassassin.jsonl.gz --name spamassassin
	id=$$(ls -t var/models | grep '^spamassassin-' | head -1); \
	$(BIN)/mailmoat model evaluate $$id --on var/datasets/spamassassin.jsonl.gz && \
	$(BIN)/mailmoat model promote $$id

# Learn the shipped symbol weights (config/scores.toml) from the hand-set ones on the corpus
# mail the model in service was not trained on (docs/model.md, "Learned scores").
scores: venv
	$(BIN)/mailmoat model scores --corpus $(CORPUS) --base config/scores-hand.toml \
		--out config/scores.toml

stop:
	scripts/clamd stop

clean: stop
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .coverage
