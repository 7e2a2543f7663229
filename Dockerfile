# dlp-relay container image: compile in a full build stage, run from a slim stage with production dependencies only, as the non-root node user.

# ---- build: dev dependencies and tsc, thrown away afterwards ----
FROM node:22-bookworm-slim AS build
WORKDIR /app
# Manifests first so the dependency layer is cached until package-lock.json changes.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime ----
FROM node:22-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
# Application files stay root-owned: the relay only needs to read them.
COPY --from=build /app/dist ./dist
COPY config ./config
# Spool, quarantine and outbox hold mail the relay has answered 250 for: created before VOLUME so a
# fresh volume inherits node's ownership, mode 0700 because the content is sensitive by definition.
RUN mkdir -p /var/lib/dlp-relay/spool /var/lib/dlp-relay/quarantine /var/lib/dlp-relay/outbox /var/lib/dlp-relay/cas-outbox \
 && chown -R node:node /var/lib/dlp-relay \
 && chmod -R 0700 /var/lib/dlp-relay
VOLUME ["/var/lib/dlp-relay"]
# Defaults suit a container: data goes to the state directory /var/lib/dlp-relay (an installed package
# has no src/, so that is its default), the config to /etc/dlp-relay/dlp-relay.yaml when mounted there
# (-v ./dlp-relay.yaml:/etc/dlp-relay/dlp-relay.yaml:ro). The relay must listen on all interfaces here;
# allowed client networks are left to the operator (DLP_RELAY_ALLOWED_CLIENTS or the config file):
# defaulting to "everyone" would make an open relay.
ENV DLP_RELAY_LISTEN=0.0.0.0:2525
USER node
# 2525 SMTP (unprivileged, so no root needed), 8425 admin/health/metrics HTTP. The admin listener stays
# on the container's loopback unless the config or DLP_RELAY_ADMIN_LISTEN=0.0.0.0:8425 says otherwise
# (then with DLP_RELAY_ADMIN_TOKEN, behind TLS).
EXPOSE 2525 8425
# `dlp-relay health` reads the same configuration as `serve`, so the check follows a configured admin
# address instead of assuming one. Stop with a timeout longer than limits.shutdownGraceMs (20 s):
# docker run --stop-timeout 45 / compose stop_grace_period: 45s.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "dist/cli/main.js", "health", "--timeout", "3000"]
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["serve"]
