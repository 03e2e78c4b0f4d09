// The console's shell: the app picker, the views (one per `#/name`), loading the apps.

import { getJson } from './api.js';
import { h, replace, status } from './dom.js';
import * as debugConsole from './console.js';
import * as deadLetters from './deadletters.js';
import * as reports from './reports.js';
import * as system from './system.js';

const VIEWS = {
  reports: { title: 'Reports', module: reports },
  system: { title: 'System', module: system },
  console: { title: 'Debug console', module: debugConsole },
  'dead-letters': { title: 'Dead letters', module: deadLetters },
};

const shell = {
  apps: [],
  app: null,
  current: null,
};

function viewName() {
  const name = location.hash.replace(/^#\/?/, '').split('?')[0];
  return Object.hasOwn(VIEWS, name) ? name : 'reports';
}

function show(name) {
  const main = document.getElementById('view');
  shell.current?.view.unmount?.();
  for (const link of document.querySelectorAll('nav a[data-view]')) {
    if (link.dataset.view === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const { title, module } = VIEWS[name];
  document.title = `${title} · Switchboard`;
  const container = h('section', { class: 'view', 'aria-labelledby': 'view-title' });
  container.append(h('h2', { id: 'view-title' }, title));
  replace(main, container);
  shell.current = { name, view: module.mount(container, { app: shell.app, apps: shell.apps }) };
}

function route() {
  // Other fragments (the skip link's #main) are in-page targets, not views.
  if (shell.current && !location.hash.startsWith('#/')) return;
  const name = viewName();
  if (shell.current?.name !== name) show(name);
}

async function start() {
  const main = document.getElementById('view');
  const picker = document.getElementById('app');
  replace(main, status('loading', 'Loading the apps…'));
  let apps;
  try {
    ({ apps } = await getJson('/api/apps'));
  } catch (error) {
    replace(main, status('error', `The apps could not be loaded: ${error.message}`));
    return;
  }
  if (apps.length === 0) {
    replace(main, status('empty', 'No app is configured: add an [[apps]] section to the config.'));
    return;
  }
  shell.apps = apps;
  const wanted = new URLSearchParams(location.hash.split('?')[1] ?? '').get('app');
  shell.app = apps.includes(wanted) ? wanted : apps[0];
  replace(picker, apps.map((id) => h('option', { value: id, selected: id === shell.app }, id)));
  picker.disabled = false;
  picker.addEventListener('change', () => {
    shell.app = picker.value;
    show(shell.current?.name ?? viewName());
  });
  window.addEventListener('hashchange', route);
  route();
}

start();
