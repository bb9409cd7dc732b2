import { ConnectionIndicator } from './ConnectionIndicator';
import { CountdownPanel } from './CountdownPanel';
import { InvalidPayloadPanel } from './InvalidPayloadPanel';
import { TasksPanel } from './TasksPanel';
import { WordCountPanel } from './WordCountPanel';

export function App() {
  return (
    <main>
      <header>
        <h1>taskgate demo</h1>
        <ConnectionIndicator />
      </header>
      <WordCountPanel />
      <CountdownPanel />
      <InvalidPayloadPanel />
      <TasksPanel />
    </main>
  );
}
